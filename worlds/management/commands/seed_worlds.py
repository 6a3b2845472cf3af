from django.core.management.base import BaseCommand, CommandError

from worlds.seeding import SeedingError, SeedResult, seed_worlds


class Command(BaseCommand):
    help = (
        "Seed FAKE worlds (one completed run each, with a placeholder bible, characters and posts in Mongo) "
        "for load tests. Refuses if worlds with the prefix exist already."
    )

    def add_arguments(self, parser):
        parser.add_argument("--worlds", type=int, default=10_000, help="worlds to create")
        parser.add_argument("--posts", type=int, default=100_000, help="posts in all, spread over the worlds")
        parser.add_argument("--characters-per-world", type=int, default=2)
        parser.add_argument("--prefix", default="Seeded", help='world names are "<prefix> world 00042"')

    def handle(self, *args, **opts):
        self.stdout.write(
            f"seeding FAKE content: {opts['worlds']} worlds, {opts['posts']} posts, "
            f"{opts['characters_per_world']} characters per world"
        )
        try:
            result = seed_worlds(
                worlds=opts["worlds"],
                posts=opts["posts"],
                characters_per_world=opts["characters_per_world"],
                prefix=opts["prefix"],
                progress=self._progress,
            )
        except SeedingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"seeded (fake content) {result.worlds} worlds, {result.runs} runs, {result.bibles} bibles, "
                f"{result.characters} characters, {result.posts} posts in {result.seconds:.1f}s"
            )
        )

    def _progress(self, result: SeedResult) -> None:
        self.stdout.write(f"  {result.worlds} worlds, {result.posts} posts ({result.seconds:.1f}s)")
