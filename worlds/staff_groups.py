"""Staff roles as Django groups: editors define worlds, start and publish runs; reviewers approve and reject."""

STAFF_GROUPS = {
    "Editors": [
        ("world", ["add_world", "change_world", "delete_world", "view_world"]),
        ("generationrun", ["view_generationrun", "start_run", "cancel_run", "publish_run"]),
        ("liveworld", ["view_liveworld", "control_live_world"]),
    ],
    "Reviewers": [
        ("world", ["view_world"]),
        ("generationrun", ["view_generationrun", "review_run"]),
        ("liveworld", ["view_liveworld"]),
    ],
}


def grant_staff_groups(Group, Permission) -> None:
    """Create the groups with their permissions (idempotent). Takes the models as
    arguments so the data migration can pass its historical versions."""
    for name, grants in STAFF_GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for model, codenames in grants:
            group.permissions.add(
                *Permission.objects.filter(
                    content_type__app_label="worlds", content_type__model=model, codename__in=codenames
                )
            )
