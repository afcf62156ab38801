"""psycopg 3 (libpq) through pgwarden: SNI from host=<tenant>.pg.test, server-side binding,
protocol-level prepared statements, libpq pipeline mode and binary results."""
import psycopg
from psycopg import pq

from _common import UNICODE_SAMPLE, config, emit, libpq_params, md5, payload

cfg = config()
conn = psycopg.connect(channel_binding="require", **libpq_params(cfg, "psycopg3-check"))
res = {"driver": "psycopg3", "version": psycopg.__version__, "libpq": pq.version()}
res["ssl_in_use"] = bool(conn.pgconn.ssl_in_use)

row = conn.execute("SELECT current_user, current_setting('application_name')").fetchone()
res["user"], res["application_name"] = row

# Parameterised: psycopg 3 sends parameters separately (extended protocol).
total, text = conn.execute("SELECT %s::int + %s::int, %s::text", (40, 2, UNICODE_SAMPLE)).fetchone()
res["sum"] = total
res["unicode_ok"] = text == UNICODE_SAMPLE

# Protocol-level prepared statement, reused.
ok = True
for i in range(50):
    ok = ok and conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0] == i * 2
server = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql").fetchone()[0]
res["prepared"] = {"reuses": 50, "results_ok": ok, "server_statements": server}

# Pipeline mode: many Parse/Bind/Execute before one Sync.
with conn.pipeline():
    curs = [conn.execute("SELECT %s::int + 1", (i,)) for i in range(20)]
res["pipeline_ok"] = [c.fetchone()[0] for c in curs] == [i + 1 for i in range(20)]

conn.execute("CREATE TEMP TABLE t (v int)")
err_code = None
try:
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1), (2)")
        conn.execute("SELECT 1 / 0")
except psycopg.Error as e:
    err_code = e.sqlstate
rows_after_rollback = conn.execute("SELECT count(*) FROM t").fetchone()[0]
res["rollback"] = {
    "rows_after_rollback": rows_after_rollback,
    "error_code": err_code,
    "after_ok": conn.execute("SELECT 7").fetchone()[0] == 7,
}

data = payload()
cur = conn.cursor(binary=True)
back, server_md5 = cur.execute("SELECT %b::bytea, md5(%b::bytea)", (data, data)).fetchone()
back = bytes(back)
res["bytea"] = {"length": len(back), "equal": back == data, "md5_match": server_md5 == md5(data)}
conn.close()
emit(res)
