/**
 * What a tenant installs in its own database for staff access on request and access transparency
 * (issue 17), as `pgwarden tenant-sql` prints it: the schema, the grants table, the customer's
 * functions and the staff_access_log. Asking about grants is support-grants.ts's, writing the log
 * session/transparency.ts's.
 *
 * Owned by the role that runs it (the tenant's admin role). The lookup role (auth_user) may read
 * the grants and call record_staff_access, nothing else: it cannot grant itself access, and
 * PUBLIC (the staff role included) can neither call the customer's functions nor read the tables.
 */

/** A role name as an SQL identifier (quoted; a double quote doubled). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** The statements, in order, for a lookup role named `lookupRole`. */
export function tenantSqlStatements(lookupRole: string): string[] {
  const lookup = quoteIdent(lookupRole);
  return [
    'CREATE SCHEMA IF NOT EXISTS pgwarden',
    `CREATE TABLE pgwarden.support_grants (
  ticket      text PRIMARY KEY CHECK (length(ticket) BETWEEN 1 AND 256),
  access      text NOT NULL CHECK (access IN ('read', 'write')),
  granted_by  name NOT NULL DEFAULT current_user,
  granted_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  revoked_at  timestamptz
)`,
    `CREATE FUNCTION pgwarden.grant_support(p_ticket text, p_duration interval, p_access text DEFAULT 'read')
  RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
  v_expires timestamptz := clock_timestamp() + p_duration;
BEGIN
  IF p_access IS NULL OR p_access NOT IN ('read', 'write') THEN
    RAISE EXCEPTION 'access must be ''read'' or ''write''' USING ERRCODE = '22023';
  END IF;
  IF p_duration IS NULL OR p_duration <= interval '0' OR p_duration > interval '30 days' THEN
    RAISE EXCEPTION 'duration must be more than 0 and at most 30 days' USING ERRCODE = '22023';
  END IF;
  INSERT INTO pgwarden.support_grants AS g (ticket, access, expires_at) VALUES (p_ticket, p_access, v_expires)
  ON CONFLICT (ticket) DO UPDATE
    SET access = EXCLUDED.access, granted_by = current_user, granted_at = clock_timestamp(), expires_at = EXCLUDED.expires_at, revoked_at = NULL;
  RETURN v_expires;
END $$`,
    `CREATE FUNCTION pgwarden.revoke_support(p_ticket text) RETURNS boolean
  LANGUAGE sql SET search_path = pg_catalog AS $$
  WITH r AS (
    UPDATE pgwarden.support_grants SET revoked_at = clock_timestamp()
    WHERE ticket = p_ticket AND revoked_at IS NULL RETURNING 1
  ) SELECT count(*) > 0 FROM r
$$`,
    `CREATE TABLE pgwarden.staff_access_log (
  record_id   uuid PRIMARY KEY,
  seq         bigint NOT NULL,
  at          timestamptz NOT NULL,
  session_id  uuid,
  sub         text,
  ticket      text,
  access      text,
  event       text NOT NULL,
  kind        text,
  query       text,
  result      text,
  record_hash text NOT NULL
)`,
    'CREATE INDEX staff_access_log_at ON pgwarden.staff_access_log (at)',
    `CREATE FUNCTION pgwarden.record_staff_access(p_records jsonb) RETURNS integer
  LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  WITH ins AS (
    INSERT INTO pgwarden.staff_access_log
    SELECT * FROM jsonb_populate_recordset(NULL::pgwarden.staff_access_log, p_records)
    ON CONFLICT (record_id) DO NOTHING RETURNING 1
  ) SELECT count(*)::integer FROM ins
$$`,
    'REVOKE ALL ON FUNCTION pgwarden.grant_support(text, interval, text) FROM PUBLIC',
    'REVOKE ALL ON FUNCTION pgwarden.revoke_support(text) FROM PUBLIC',
    'REVOKE ALL ON FUNCTION pgwarden.record_staff_access(jsonb) FROM PUBLIC',
    `GRANT USAGE ON SCHEMA pgwarden TO ${lookup}`,
    `GRANT SELECT ON pgwarden.support_grants TO ${lookup}`,
    `GRANT EXECUTE ON FUNCTION pgwarden.record_staff_access(jsonb) TO ${lookup}`,
  ];
}

/** The script `pgwarden tenant-sql` prints. */
export function tenantSqlScript(lookupRole: string): string {
  return (
    `-- pgwarden: staff access on request and access transparency (issue 17).\n` +
    `-- Run as the tenant's admin role (it will own all of this), in the database auth_database names.\n` +
    `-- ${quoteIdent(lookupRole)} is the tenant's auth_user; it only reads grants and appends to the log.\n` +
    `-- Grant:    SELECT pgwarden.grant_support('INC-4711', interval '2 hours', 'read');\n` +
    `-- Withdraw: SELECT pgwarden.revoke_support('INC-4711');\n` +
    `-- Watch:    SELECT * FROM pgwarden.staff_access_log ORDER BY seq;\n` +
    tenantSqlStatements(lookupRole)
      .map((s) => `${s};\n`)
      .join('')
  );
}
