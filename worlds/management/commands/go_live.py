from django.core.management.base import BaseCommand, CommandError

from worlds.management.commands.generate_world import SAMPLE
from worlds.models import World
from worlds.services import ActionError, world_go_live


class Command(BaseCommand):
    help = "Take a published world (or the sample world) live: its cast goes on posting, a world day at a time."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--world", type=int, help="ID of the world")
        target.add_argument("--sample", action="store_true", help="the sample world (generate_world --sample)")
        parser.add_argument("--day-seconds", type=float, default=60.0, help="a world day every this many seconds")
        parser.add_argument("--posts-per-day", type=int, default=3)
        parser.add_argument("--comments-per-day", type=int, default=2)
        parser.add_argument("--daily-token-budget", type=int, default=20_000)

    def handle(self, *args, **opts):
        found = World.objects.filter(name=SAMPLE["name"]) if opts["sample"] else World.objects.filter(pk=opts["world"])
        world = found.order_by("pk").first()
        if world is None:
            raise CommandError(
                "no such world" + (": run generate_world --sample --wait first" if opts["sample"] else "")
            )
        try:
            live = world_go_live(
                world=world,
                day_seconds=opts["day_seconds"],
                posts_per_day=opts["posts_per_day"],
                comments_per_day=opts["comments_per_day"],
                daily_token_budget=opts["daily_token_budget"],
            )
        except ActionError as exc:
            raise CommandError(str(exc)) from None
        first = "its first day" if not live.first_day else f"day {live.first_day + 1} (it goes on from its last day)"
        self.stdout.write(
            f"{world} is live ({live.workflow_id}): {first} starts now, then one every "
            f"{live.day_seconds:g} s. Watch it at /worlds/{world.pk}/ and /admin/worlds/world/{world.pk}/live/"
        )
