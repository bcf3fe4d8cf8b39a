"""`manage.py migrate` under a PostgreSQL advisory lock, so two deploys can never migrate at once.

Run as `python -m djship_production.migrate` inside a release, with the production settings.
"""

import django

# Any fixed 64-bit number shared by every release: "djship migrate".
MIGRATE_LOCK = 0x646A736869706D67


def main() -> None:
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK])
        try:
            call_command("migrate", interactive=False, verbosity=1)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK])


if __name__ == "__main__":
    main()
