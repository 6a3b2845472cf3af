from django.apps import AppConfig


class ClientsConfig(AppConfig):
    name = "clients"
    verbose_name = "Shared clients"

    def ready(self) -> None:
        from clients import mongo

        # Lazy: no socket is opened until the first operation, so this is safe
        # under runserver's autoreloader and before a forking server forks.
        mongo.init_client()
