import json

from django.core.management.base import BaseCommand, CommandError
from django.db.models import F

from generation import quality
from worlds import selectors
from worlds.models import GenerationRun, World

LATEST = 20


class Command(BaseCommand):
    help = (
        "Print the content quality report of a run, of a world's latest run, or of the 20 latest finished "
        "runs: run figures against their targets, and the characters that miss theirs."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--run", type=int, help="ID of the run")
        target.add_argument("--world", type=int, help="ID of the world (its latest run)")
        parser.add_argument("--json", action="store_true", help="print a JSON list of {run, report} instead")

    def handle(self, *args, **opts):
        runs = self._runs(opts["run"], opts["world"])
        reports = [(run, selectors.run_quality(run=run)) for run in runs]
        if opts["json"]:
            body = [{"run_id": run.pk, "run": str(run), "report": report.as_dict()} for run, report in reports]
            self.stdout.write(json.dumps(body, indent=2))
            return
        if not reports:
            self.stdout.write("no finished runs")
        for run, report in reports:
            self._print(run, report)

    @staticmethod
    def _runs(run_id: int | None, world_id: int | None) -> list[GenerationRun]:
        runs = GenerationRun.objects.select_related("world")
        if run_id is not None:
            run = runs.filter(pk=run_id).first()
            if run is None:
                raise CommandError(f"no run with ID {run_id}")
            return [run]
        if world_id is not None:
            world = World.objects.filter(pk=world_id).first()
            if world is None:
                raise CommandError(f"no world with ID {world_id}")
            latest = selectors.world_latest_run(world=world)
            if latest is None:
                raise CommandError(f"{world} (ID {world_id}) has no runs yet")
            return [latest]
        return list(
            runs.exclude(status__in=GenerationRun.ACTIVE).order_by(F("finished_at").desc(nulls_last=True), "-pk")[
                :LATEST
            ]
        )

    def _print(self, run: GenerationRun, report: quality.QualityReport) -> None:
        figures = report.run
        versions = ", ".join(report.prompt_versions) or "not recorded"
        characters = len(report.characters)
        self.stdout.write(f"{run} (ID {run.pk}, {run.status}): {characters} characters; prompt versions: {versions}")
        for name in quality.RUN_FIGURES:
            shown = quality.shown(getattr(figures, name))
            met = figures.checks.get(name)
            mark = "" if met is None else "ok" if met else "MISSED"
            target = quality.THRESHOLDS.get(name, "")
            self.stdout.write(f"  {quality.LABELS[name]:<42} {shown:>8}  {str(target):<8} {mark}")
        for flag in figures.flags:
            self.stdout.write(self.style.WARNING(f"  flag: {flag}"))
        flagged = [character for character in report.characters if character.flags]
        for character in flagged:
            self.stdout.write(self.style.WARNING(f"  character #{character.index} @{character.handle}:"))
            for flag in character.flags:
                self.stdout.write(self.style.WARNING(f"    {flag}"))
        if not figures.flags and not flagged:
            self.stdout.write(self.style.SUCCESS("  no flags"))
        self.stdout.write("")
