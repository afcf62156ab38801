"""Shared bits of the driver checks: config from argv, the result line, the 64 KiB payload.

Each check prints exactly one JSON line on stdout (the last line); the .ts test asserts on it.
Run with Debian's /usr/bin/python3, which has psycopg2, psycopg 3 and asyncpg.
"""
import hashlib
import json
import os
import sys

UNICODE_SAMPLE = "emoji 🐘🚀👩‍👩‍👧‍👦 CJK 中文 日本語 한국어 combining e\u0301 a\u0308 RTL שלום"


def config():
    cfg = json.loads(sys.argv[1])
    cfg["password"] = os.environ["PGWARDEN_TEST_PASSWORD"]
    return cfg


def payload(size=64 * 1024):
    return os.urandom(size)


def md5(data):
    return hashlib.md5(data).hexdigest()


def emit(result):
    sys.stdout.write(json.dumps(result, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def libpq_params(cfg, application_name):
    """libpq keywords for psycopg 2 and 3: SNI from host=<tenant>.pg.test, address from hostaddr, verify-full."""
    return dict(
        host=f"{cfg['tenant']}.pg.test",
        hostaddr="127.0.0.1",
        port=cfg["port"],
        dbname="postgres",
        user=cfg["user"],
        password=cfg["password"],
        sslmode="verify-full",
        sslrootcert=cfg["ca"],
        application_name=application_name,
        connect_timeout=10,
    )
