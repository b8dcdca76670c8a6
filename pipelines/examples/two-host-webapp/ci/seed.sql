-- Loaded into the database on `db` by db-setup.sh before any stage runs.
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO items (name) VALUES ('anvil'), ('rope');
