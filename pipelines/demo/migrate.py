"""Brings the schema up to date; safe to run twice."""
import psycopg2

from settings import database_url

with psycopg2.connect(database_url()) as conn, conn.cursor() as cur:
    cur.execute("ALTER TABLE items ADD COLUMN IF NOT EXISTS done boolean NOT NULL DEFAULT false")
    cur.execute("UPDATE items SET done = true WHERE title = 'Write the pipeline'")
print("migrated")
