from django.apps import AppConfig


class ClientsConfig(AppConfig):
    name = "clients"
    verbose_name = "Shared clients"

    def ready(self) -> None:
        from clients import mongo, tracing

        tracing.start()  # before any client is made (TRACING_ENABLED; off by default)
        # Lazy: no socket is opened until the first operation, so this is safe
        # under runserver's autoreloader and before a forking server forks.
        mongo.init_client()
