//! Gantry's dashboard: view models and the askama templates that render them. Owned by the web
//! helper. It never queries the database: the server builds the view models.
