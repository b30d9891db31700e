#!/usr/bin/env python3
"""Test image entrypoint: a real Synapse (Debian's matrix-synapse) on the database the tests give it.

On the first start it generates homeserver.yaml with Synapse's own generator, then sets what a test homeserver
needs: the PostgreSQL database (psycopg2, host = the alias the upgrade tool moves between clusters), an HTTP
listener on 8008, registration without verification, rate limits a test client never meets, no key servers
(there is no network) and logs on stderr (`docker logs` shows them). Later starts reuse the file, as a real
deployment does. Environment: SYNAPSE_SERVER_NAME, SYNAPSE_DB_HOST, SYNAPSE_DB_USER, SYNAPSE_DB_NAME,
SYNAPSE_DB_PASSWORD (test values only).
"""
import os
import subprocess
import sys

import yaml

DATA = "/data"
CONFIG = os.path.join(DATA, "homeserver.yaml")
LOG_CONFIG = os.path.join(DATA, "log.yaml")
UNLIMITED = {"per_second": 1000, "burst_count": 10000}


def generate() -> None:
    server_name = os.environ.get("SYNAPSE_SERVER_NAME", "test.local")
    subprocess.run(
        [sys.executable, "-m", "synapse.app.homeserver", "--server-name", server_name, "--config-path", CONFIG,
         "--data-directory", DATA, "--generate-config", "--report-stats=no"],
        check=True, stdout=subprocess.DEVNULL)
    with open(CONFIG) as f:
        config = yaml.safe_load(f)
    config["database"] = {
        "name": "psycopg2",
        "args": {
            "host": os.environ.get("SYNAPSE_DB_HOST", "db"),
            "user": os.environ.get("SYNAPSE_DB_USER", "synapse"),
            "password": os.environ["SYNAPSE_DB_PASSWORD"],
            "dbname": os.environ.get("SYNAPSE_DB_NAME", "synapse"),
            "cp_min": 2,
            "cp_max": 5,
        },
    }
    config["listeners"] = [{"port": 8008, "bind_addresses": ["0.0.0.0"], "type": "http", "tls": False,
                            "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}]
    config["enable_registration"] = True
    config["enable_registration_without_verification"] = True
    config["trusted_key_servers"] = []
    config["suppress_key_server_warning"] = True
    config["report_stats"] = False
    config["media_store_path"] = os.path.join(DATA, "media_store")
    config["log_config"] = LOG_CONFIG
    for key in ("rc_message", "rc_registration", "rc_joins", "rc_invites", "rc_3pid_validation",
                "rc_admin_redaction", "rc_key_requests", "rc_presence", "rc_delayed_event_mgmt"):
        config[key] = UNLIMITED
    config["rc_login"] = {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED}
    config["rc_joins"] = {"local": UNLIMITED, "remote": UNLIMITED}
    config["rc_invites"] = {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED}
    with open(CONFIG, "w") as f:
        yaml.safe_dump(config, f)
    with open(LOG_CONFIG, "w") as f:
        yaml.safe_dump({
            "version": 1,
            "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "precise"}},
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["console"]},
            "disable_existing_loggers": False,
        }, f)


if __name__ == "__main__":
    if not os.path.exists(CONFIG):
        generate()
    os.execv(sys.executable, [sys.executable, "-m", "synapse.app.homeserver", "--config-path", CONFIG])
