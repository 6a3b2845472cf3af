"""Living worlds: a published world that goes on, one "world day" at a time. ``workflows.py`` holds
``LiveWorldWorkflow`` (one long-running workflow per live world), ``activities.py`` a day's steps,
``prompts.py`` their prompts, ``contracts.py`` the dataclasses they pass. Imports nothing from Django."""
