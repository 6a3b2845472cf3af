import time

from django.core.management.base import BaseCommand, CommandError

from worlds.models import GenerationRun, World
from worlds.services import ActionError, generation_start

SAMPLE = {
    "name": "Lanternfall Archipelago",
    "premise": "Floating islands of lantern-lit tea houses, where sky-whales carry letters between "
    "rival guilds of cartographers and glassblowers.",
    "genre": "cozy fantasy",
    "tone": "whimsical",
    "visual_style": World.VisualStyle.WATERCOLOR,
    "character_count": 4,
    "posts_per_character": 3,
}


class Command(BaseCommand):
    help = "Start a generation run of a world (or of the built-in sample) and optionally wait for it."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--world", type=int, help="ID of the world to generate")
        target.add_argument("--sample", action="store_true", help="create (once) and generate the sample world")
        parser.add_argument("--wait", action="store_true", help="print progress until the run finishes")
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")

    def handle(self, *args, **opts):
        if opts["sample"]:
            world, _ = World.objects.get_or_create(name=SAMPLE["name"], defaults=SAMPLE)
        else:
            world = World.objects.filter(pk=opts["world"]).first()
            if world is None:
                raise CommandError(f"no world with ID {opts['world']}")
        try:
            run = generation_start(world=world)
        except ActionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"started {run} (workflow {run.workflow_id})")
        if not opts["wait"]:
            return
        started, last = time.monotonic(), None
        while run.is_active:
            if time.monotonic() - started > opts["timeout"]:
                raise CommandError(f"{run} is still {run.status} after {opts['timeout']:.0f}s")
            line = (
                f"  {run.status}/{run.stage}: characters {run.characters_done}/{run.characters_total}, "
                f"posts {run.posts_done}/{run.posts_total}, tokens {run.tokens_used}"
            )
            if line != last:
                self.stdout.write(line)
                last = line
            time.sleep(0.5)
            run.refresh_from_db()
        if run.status != GenerationRun.Status.COMPLETED:
            raise CommandError(f"{run} ended {run.status}: {run.error}")
        self.stdout.write(
            f"{run} completed in {time.monotonic() - started:.1f}s: {run.characters_done} characters, "
            f"{run.posts_done} posts, {run.degraded_items} degraded, {run.tokens_used} tokens"
        )
