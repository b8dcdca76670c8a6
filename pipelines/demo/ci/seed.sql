CREATE TABLE items (
    id    serial PRIMARY KEY,
    title text NOT NULL
);
INSERT INTO items (title) VALUES ('Write the pipeline'), ('Push the commit'), ('Read the results');
