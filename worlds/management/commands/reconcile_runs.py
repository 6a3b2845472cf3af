from django.core.management.base import BaseCommand, CommandError

from worlds.services import ActionError, runs_reconcile


class Command(BaseCommand):
    help = (
        "Check every active run row against Temporal and correct rows whose workflow ended, was "
        "terminated elsewhere, vanished or never started (workers also do this every minute)."
    )

    def handle(self, *args, **opts):
        try:
            changes = runs_reconcile()
        except ActionError as exc:
            raise CommandError(str(exc)) from None
        for change in changes:
            self.stdout.write(change)
        self.stdout.write(self.style.SUCCESS(f"{len(changes)} run(s) corrected"))
