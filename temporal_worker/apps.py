from django.apps import AppConfig


class TemporalWorkerConfig(AppConfig):
    name = "temporal_worker"
    verbose_name = "Temporal worker"
