-- The queue's and the auth app's databases beside MLflow's (made by the image on first start).
CREATE DATABASE queue;
CREATE DATABASE auth;
