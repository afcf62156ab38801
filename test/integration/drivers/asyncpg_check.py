"""asyncpg (not libpq) through pgwarden. asyncpg derives SNI from the host it connects to, and
connects to 127.0.0.1 here (acme.pg.test does not resolve), so the tenant comes either from
  mode "sni":     an SSLContext that puts <tenant>.pg.test in SNI and checks the cert against it;
  mode "options": the startup parameter options=-c pgwarden.tenant=<tenant> (server_settings),
                  with verify-full against the certificate's IP SAN 127.0.0.1.
"""
import asyncio
import ssl
import sys

import asyncpg

from _common import UNICODE_SAMPLE, config, emit, md5, payload

cfg = config()
mode = cfg.get("mode", "sni")


class SniContext(ssl.SSLContext):
    """Sends (and verifies) a fixed server name whatever host the driver connected to."""

    sni = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=self.sni, session=session)


async def main():
    if mode == "sni":
        ctx = SniContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.sni = f"{cfg['tenant']}.pg.test"
        settings = {"application_name": "asyncpg-check"}
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        settings = {"application_name": "asyncpg-check", "options": f"-c pgwarden.tenant={cfg['tenant']}"}
    ctx.load_verify_locations(cafile=cfg["ca"])
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED

    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=cfg["port"],
        user=cfg["user"],
        password=cfg["password"],
        database="postgres",
        ssl=ctx,
        server_settings=settings,
        timeout=10,
    )
    res = {"driver": "asyncpg", "mode": mode, "version": asyncpg.__version__}
    sslobj = conn._transport.get_extra_info("ssl_object")
    res["ssl_in_use"] = sslobj is not None
    res["sni_sent"] = sslobj.server_hostname if sslobj is not None else None

    row = await conn.fetchrow("SELECT current_user AS u, current_setting('application_name') AS a")
    res["user"], res["application_name"] = row["u"], row["a"]

    total, text = await conn.fetchrow("SELECT $1::int + $2::int, $3::text", 40, 2, UNICODE_SAMPLE)
    res["sum"] = total
    res["unicode_ok"] = text == UNICODE_SAMPLE

    stmt = await conn.prepare("SELECT $1::int * 2")
    ok = True
    for i in range(50):
        ok = ok and await stmt.fetchval(i) == i * 2
    server = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
    res["prepared"] = {"reuses": 50, "results_ok": ok, "server_statements": server}

    await conn.execute("CREATE TEMP TABLE t (v int)")
    err_code = None
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1), (2)")
            await conn.execute("SELECT 1 / 0")
    except asyncpg.PostgresError as e:
        err_code = e.sqlstate
    res["rollback"] = {
        "rows_after_rollback": await conn.fetchval("SELECT count(*) FROM t"),
        "error_code": err_code,
        "after_ok": await conn.fetchval("SELECT 7") == 7,
    }

    # Binary COPY and a portal read in batches (Execute with a row limit, PortalSuspended).
    await conn.execute("CREATE TEMP TABLE c (id int, name text)")
    await conn.copy_records_to_table("c", records=[(i, f"n{i}") for i in range(1, 1001)])
    copied = await conn.fetchval("SELECT sum(id) FROM c")
    async with conn.transaction():
        seen = 0
        async for r in conn.cursor("SELECT id FROM c ORDER BY id", prefetch=100):
            seen += r["id"]
    res["copy_sum"] = copied
    res["cursor_sum"] = seen

    data = payload()
    back, server_md5 = await conn.fetchrow("SELECT $1::bytea, md5($1::bytea)", data)
    res["bytea"] = {"length": len(back), "equal": bytes(back) == data, "md5_match": server_md5 == md5(data)}
    await conn.close()
    emit(res)


asyncio.run(main())
