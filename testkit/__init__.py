"""What tests, bench and reliability share: a real server and PostgreSQL in subprocesses, test
images and artifacts, an HTTP proxy, the client scenarios and slow references. Never imported
by service/ or training/."""
