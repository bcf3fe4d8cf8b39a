# App server app1: gunicorn runs Django's ASGI application in uvicorn workers behind nginx.
# Rendered by djship from djship.toml; edits are overwritten by the next `djship up`.
wsgi_app = "djship_production.asgi:application"
chdir = "/srv/example/board/.djship/servers/app1/release/app"
pythonpath = "/srv/example/board/.djship/servers/app1/release/app,/srv/example/board/.djship/servers/app1/release"
raw_env = ["DJANGO_SETTINGS_MODULE=djship_production.settings", "DJSHIP_LIVE_FILE=/srv/example/board/.djship/servers/app1/live.json", "DJSHIP_ASGI_APPLICATION=board.asgi.application"]
bind = ["unix:/srv/example/board/.djship/servers/app1/socket/gunicorn.sock"]
workers = 3
# uvicorn_worker.UvicornWorker, closing its WebSockets with 1001 "going away" when it stops (see that module).
worker_class = "djship_production.asgi_worker.Worker"
timeout = 30
graceful_timeout = 30
keepalive = 2
# Each worker opens its own database connection; never share one through --preload.
preload_app = False
control_socket_disable = True
proc_name = "djship-app1"
# nginx keeps the access log (with the client's address); gunicorn logs errors and Django's output.
errorlog = "-"
capture_output = True
