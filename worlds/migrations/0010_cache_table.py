"""The cache table (settings.CACHES) that API throttles and admin login limits share across processes."""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("worlds", "0009_live_worlds")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
