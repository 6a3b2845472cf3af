from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Create (or reset the passwords of) the local stack's users: a superuser and a reviewer "
        "(approval needs a second person: nobody approves a run they started). Refused in production."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--reviewer", default="reviewer")
        parser.add_argument("--password", required=True)

    def handle(self, *args, **opts):
        if settings.PRODUCTION:
            raise CommandError("ensure_local_admin is for the local stack only; use createsuperuser in production")
        admin = self._user(opts["username"], opts["password"], superuser=True)
        reviewer = self._user(opts["reviewer"], opts["password"], superuser=False)
        reviewer.groups.add(Group.objects.get(name="Reviewers"))
        self.stdout.write(f"superuser {admin.username} and reviewer {reviewer.username} are ready")

    @staticmethod
    def _user(username: str, password: str, *, superuser: bool):
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff, user.is_superuser = True, superuser
        user.set_password(password)
        user.save()
        return user
