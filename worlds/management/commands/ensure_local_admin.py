from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create (or reset the password of) the local stack's superuser. Refused in production."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", required=True)

    def handle(self, *args, **opts):
        if settings.PRODUCTION:
            raise CommandError("ensure_local_admin is for the local stack only; use createsuperuser in production")
        user, created = get_user_model().objects.get_or_create(
            username=opts["username"], defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(opts["password"])
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} superuser {user.username}")
