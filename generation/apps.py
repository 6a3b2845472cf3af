from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        from generation import mongo

        # Lazy: no socket is opened until the first operation, so this is safe
        # under runserver's autoreloader and before a forking server forks.
        mongo.init_client()
