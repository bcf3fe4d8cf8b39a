from django.apps import AppConfig


class TicksConfig(AppConfig):
    name = "ticks"
