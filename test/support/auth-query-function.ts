/**
 * The auth_query lookup function as the README gives it, for a superuser to run in a tenant's
 * database (the role `pgwarden_auth` must exist): one copy for the tests and enum-timing.
 */
export const AUTH_QUERY_FUNCTION_SQL: readonly string[] = [
  'CREATE SCHEMA pgwarden',
  `CREATE FUNCTION pgwarden.get_auth(p_usename text) RETURNS TABLE(usename name, passwd text, valuntil timestamptz)
     LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
     AS $$ SELECT usename, passwd, valuntil FROM pg_shadow WHERE usename = p_usename $$`,
  'REVOKE ALL ON FUNCTION pgwarden.get_auth(text) FROM PUBLIC',
  'GRANT USAGE ON SCHEMA pgwarden TO pgwarden_auth',
  'GRANT EXECUTE ON FUNCTION pgwarden.get_auth(text) TO pgwarden_auth',
];
