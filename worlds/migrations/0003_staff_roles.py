"""Staff roles as groups: editors define worlds and start runs; reviewers approve and reject."""

from django.db import migrations

ROLES = {
    "Editors": [
        ("worlds", "world", ["add_world", "change_world", "delete_world", "view_world"]),
        ("worlds", "generationrun", ["view_generationrun", "start_run", "cancel_run"]),
    ],
    "Reviewers": [
        ("worlds", "world", ["view_world"]),
        ("worlds", "generationrun", ["view_generationrun", "review_run"]),
    ],
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():  # permissions exist only after post_migrate otherwise
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, model, codenames in grants:
            group.permissions.add(*Permission.objects.filter(
                content_type__app_label=app_label, content_type__model=model, codename__in=codenames))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("worlds", "0002_roles_and_audit"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
