"""Seed the starter categories.

A frozen copy of the starter set (``server.domain.mentors.services.STARTER_CATEGORIES``
at the time of writing): a migration must mean the same thing forever, so it
does not import application code. ``ON CONFLICT (slug) DO NOTHING`` makes it
safe on a database where an admin already created some of these; backwards
removes only the seeded slugs.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-27T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Seed the starter categories"

CATEGORIES: list[tuple[str, str, str, int]] = [
    ("career", "Career", "Job search, growth at work and career changes.", 10),
    ("fitness", "Fitness", "Training, movement and healthy habits.", 20),
    ("mindfulness", "Mindfulness", "Meditation, stress and emotional balance.", 30),
    ("productivity", "Productivity", "Focus, planning and getting things done.", 40),
    ("relationships", "Relationships", "Family, friendship, dating and communication.", 50),
    ("leadership", "Leadership", "Leading teams, managing people and decisions.", 60),
    ("finance", "Finance", "Budgeting, saving, investing and money habits.", 70),
    ("creativity", "Creativity", "Writing, art, music and creative practice.", 80),
]


def _literal(value: str | int) -> str:
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    async def seed():
        rows = ",\n".join("(" + ", ".join(_literal(value) for value in row) + ")" for row in CATEGORIES)
        await engine_finder().run_ddl(
            "INSERT INTO categories (id, slug, name, description, position, created_at, updated_at)\n"
            "SELECT gen_random_uuid(), v.slug, v.name, v.description, v.position, now(), now()\n"
            f"FROM (VALUES\n{rows}\n) AS v (slug, name, description, position)\n"
            "ON CONFLICT (slug) DO NOTHING"
        )

    async def unseed():
        slugs = ", ".join(_literal(slug) for slug, *_ in CATEGORIES)
        await engine_finder().run_ddl(f"DELETE FROM categories WHERE slug IN ({slugs})")

    manager.add_raw(seed)
    manager.add_raw_backwards(unseed)

    return manager
