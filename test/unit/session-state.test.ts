/**
 * Pin detection (session/relay/session-state.ts): which Query and Parse texts leave session state, so a
 * transaction-mode client keeps its backend. A miss leaks state (a search_path, a role, a temp
 * table, a lock) to the next client of that backend, so the disguises are tested as hard as the
 * plain forms; a false positive only costs pooling for one client, and the detector errs that way.
 * The statement classes are the README's transaction-mode table.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { hasSessionState, sqlHasSessionState } from '../../src/session/relay/session-state.js';

/** A Query message's body as the relay sees it (text\0). */
const queryBody = (sql: string): Buffer => serialize.query(sql).subarray(5);
/** A Parse message's body (name\0text\0Int16 count Int32 types). */
const parseBody = (name: string, sql: string, types: number[] = []): Buffer => serialize.parse({ name, text: sql, types }).subarray(5);

function pins(sql: string): void {
  assert.equal(sqlHasSessionState(sql), true, `must pin: ${JSON.stringify(sql)}`);
  assert.equal(hasSessionState(queryBody(sql), false), true, `Query must pin: ${JSON.stringify(sql)}`);
}

function passes(sql: string): void {
  assert.equal(sqlHasSessionState(sql), false, `must not pin: ${JSON.stringify(sql)}`);
  assert.equal(hasSessionState(queryBody(sql), false), false, `Query must not pin: ${JSON.stringify(sql)}`);
}

describe('session state: the README table, statements that pin', () => {
  it('SET and RESET, in every form but SET LOCAL and SET TRANSACTION', () => {
    for (const sql of [
      'SET search_path = evil',
      'SET search_path TO evil, public',
      'SET SESSION statement_timeout = 0',
      'SET SESSION AUTHORIZATION other',
      'SET ROLE admin',
      'SET TIME ZONE UTC',
      'SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE',
      'SET local_preload_libraries = x', // a parameter whose name starts with "local"
      'SET "search_path" = evil',
      'RESET search_path',
      'RESET ALL',
      'RESET ROLE',
    ]) {
      pins(sql);
    }
  });

  it('LISTEN, SQL PREPARE, LOAD, DISCARD, DEALLOCATE', () => {
    for (const sql of ['LISTEN jobs', 'LISTEN "Jobs"', 'PREPARE q(int) AS SELECT $1', "LOAD 'auto_explain'", 'DISCARD PLANS', 'DISCARD ALL', 'DEALLOCATE q', 'DEALLOCATE ALL']) pins(sql);
  });

  it('DECLARE … WITH HOLD', () => {
    pins('DECLARE c CURSOR WITH HOLD FOR SELECT 1');
    pins('DECLARE c NO SCROLL CURSOR\n  WITH   HOLD FOR SELECT * FROM t');
  });

  it('temporary tables, views and sequences', () => {
    for (const sql of [
      'CREATE TEMP TABLE t (a int)',
      'CREATE TEMPORARY TABLE t (a int)',
      'CREATE GLOBAL TEMPORARY TABLE t (a int)',
      'CREATE LOCAL TEMP TABLE t AS SELECT 1',
      'CREATE TEMP VIEW v AS SELECT 1',
      'CREATE OR REPLACE TEMP VIEW v AS SELECT 1',
      'CREATE TEMP SEQUENCE s',
      'CREATE TABLE t (a int) ON COMMIT DROP',
      'SELECT 1 AS a INTO TEMP t',
      'SELECT * INTO TEMPORARY TABLE t FROM pg_class',
    ]) {
      pins(sql);
    }
  });

  it('set_config(…) and session advisory locks, wherever they stand in the statement', () => {
    for (const sql of [
      "SELECT set_config('search_path', 'evil', false)",
      "SELECT pg_catalog.set_config('role', 'x', false)",
      "SELECT 1 WHERE set_config ('a.b', 'c', false) IS NOT NULL",
      'SELECT pg_advisory_lock(1)',
      'SELECT pg_advisory_lock(1, 2)',
      'SELECT pg_advisory_lock_shared(1)',
      'SELECT pg_try_advisory_lock(1)',
      'SELECT pg_try_advisory_lock_shared(7)',
      'WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x',
      'SELECT "pg_advisory_lock"(1)',
    ]) {
      pins(sql);
    }
  });
});

describe('session state: statements that end with the transaction do not pin', () => {
  it('SET LOCAL, SET TRANSACTION, transaction-scoped advisory locks, ordinary cursors, plain DML', () => {
    for (const sql of [
      'SET LOCAL search_path = x',
      'set local statement_timeout = 5',
      'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
      'BEGIN; SET LOCAL work_mem = 1024; SELECT 1; COMMIT',
      'SELECT pg_advisory_xact_lock(1)',
      'SELECT pg_try_advisory_xact_lock(1)',
      'SELECT pg_advisory_xact_lock_shared(1)',
      'SELECT pg_advisory_unlock_all()',
      'DECLARE c CURSOR FOR SELECT 1',
      'DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1',
      'SELECT 1',
      'INSERT INTO t VALUES (1)',
      'INSERT INTO temp_log VALUES (1)',
      'UPDATE t SET a = 1 WHERE b = 2',
      'DELETE FROM settings WHERE id = 1',
      'SELECT * FROM settings',
      'CREATE TABLE t (a int)',
      'UNLISTEN *',
      'NOTIFY jobs',
      'SHOW search_path',
      'BEGIN',
      'COMMIT',
      '',
    ]) {
      passes(sql);
    }
  });
});

describe('session state: disguises', () => {
  it('letter case, white space and newlines', () => {
    pins('set search_path = evil');
    pins('SeT sEaRcH_pAtH = evil');
    pins('  \n\t SET\n\tsearch_path\n=\nevil');
    pins('\r\nLISTEN\tjobs');
    pins('Create\nTemp\nTable t (a int)');
    pins('SELECT PG_ADVISORY_LOCK (1)');
  });

  it('line and block comments before and inside the statement', () => {
    pins('-- a comment\nSET search_path = evil');
    pins('/* a comment */ SET search_path = evil');
    pins('/* one */ -- two\n /* three */ LISTEN jobs');
    pins('SET/**/search_path = evil');
    pins('SET--\nsearch_path = evil');
    pins('LISTEN/**/jobs');
    pins('DECLARE c CURSOR WITH/**/HOLD FOR SELECT 1');
    pins('CREATE /* x */ TEMP TABLE t (a int)');
    pins('SELECT pg_advisory_lock/**/(1)');
    pins('SELECT 1 INTO /* x */ TEMP t');
  });

  it('nested block comments (PostgreSQL nests them; the statement after the outer */ runs)', () => {
    pins('/* outer /* inner */ still a comment */ SET search_path = evil');
    pins('/* /* */ */ LISTEN jobs');
    pins('/* /* /* */ */ */ RESET ALL');
  });

  it('deep or unterminated nesting is read in linear time (this runs on the relay path)', () => {
    const began = Date.now();
    pins(`/*${'/*'.repeat(200_000)}${'*/'.repeat(200_001)} SET search_path = evil`);
    passes(`${'/*'.repeat(200_000)} SET search_path = evil`); // never closed: PostgreSQL runs nothing
    pins(`${'/**/ '.repeat(100_000)}LISTEN jobs`);
    assert.ok(Date.now() - began < 5_000, `took ${Date.now() - began} ms`);
  });

  it('a semicolon inside a comment does not hide the statement after the comment', () => {
    pins('/* ; */ SET search_path = evil');
    pins('SELECT 1; /* ; */ LISTEN jobs');
    pins('SELECT 1 -- ;\n; SET search_path = evil');
  });

  it('multiple statements in one Query: any one of them pins', () => {
    pins('SELECT 1; SET search_path = evil');
    pins('SELECT 1;SET search_path = evil;SELECT 2');
    pins('BEGIN; LISTEN jobs; COMMIT');
    pins('SELECT 1;\n\n-- then\nCREATE TEMP TABLE t (a int)');
    passes('SELECT 1; SELECT 2; UPDATE t SET a = 1');
  });

  it('words inside string literals and quoted identifiers: erring on the side of pinning', () => {
    // A semicolon inside a literal may split the text where PostgreSQL would not: only more pins.
    pins("SELECT 'x; SET search_path = evil'");
    pins("SELECT 'set_config(' AS s");
    pins("SELECT 'a'';SET search_path = evil'");
    // A literal or identifier that only contains such a word, not at a statement start, does not pin.
    passes("SELECT 'SET search_path = evil'");
    passes("INSERT INTO t VALUES ('Reset password', 'listen')");
    passes('SELECT "set" FROM t');
  });

  it('backslash escapes cannot hide a statement (whatever standard_conforming_strings says)', () => {
    // With standard_conforming_strings off, '\'' is one literal and the SET after it runs.
    pins("SELECT '\\' /* '; SET search_path = evil; -- */");
    pins("SELECT E'\\'' ; SET search_path = evil");
    pins("SELECT E'\\' /* '; SET search_path = evil; -- */");
  });

  it('dollar quoting', () => {
    pins('SELECT $$x$$; SET search_path = evil');
    pins('SELECT $tag$ ; $tag$; LISTEN jobs');
    pins("DO $$ BEGIN PERFORM set_config('search_path', 'evil', false); END $$");
    pins('DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$');
    pins('DO $$BEGIN SET search_path = evil; END$$');
    pins('DO $do$ BEGIN IF true THEN SET search_path = evil; END IF; END $do$');
    pins("DO $$ BEGIN EXECUTE 'SET search_path = evil'; END $$");
    pins("DO $$ BEGIN EXECUTE 'SE' || 'T search_path = evil'; END $$");
    pins('DO LANGUAGE plpgsql $$ BEGIN CREATE TEMP TABLE t (a int); END $$');
    passes('DO $$ BEGIN PERFORM 1; END $$');
    passes('SELECT $$SET search_path = evil$$');
  });
});

describe('session state: the message forms', () => {
  it('Query body: the text up to its NUL', () => {
    assert.equal(hasSessionState(queryBody('SET search_path = evil'), false), true);
    assert.equal(hasSessionState(queryBody('SELECT 1'), false), false);
    // A body without its terminator (malformed) is still read to the end.
    assert.equal(hasSessionState(Buffer.from('LISTEN jobs'), false), true);
  });

  it('Parse body: the query after the statement name, not the name itself', () => {
    assert.equal(hasSessionState(parseBody('', 'SET search_path = evil'), true), true);
    assert.equal(hasSessionState(parseBody('s1', 'SELECT pg_advisory_lock($1)', [23]), true), true);
    assert.equal(hasSessionState(parseBody('s1', 'SELECT $1::int', [23]), true), false);
    // A statement named like a pinning statement is only a name.
    assert.equal(hasSessionState(parseBody('SET search_path = evil', 'SELECT 1'), true), false);
    // Read as a Query body, the same bytes would be judged by the name: the flag matters.
    assert.equal(hasSessionState(parseBody('SET x = 1', 'SELECT 1'), false), true);
  });
});

describe('session state: the word pre-filter', () => {
  it('never changes the answer: 20,000 random mixes of pinning words, cases, comments, quotes and UTF-8 read both ways', () => {
    // hasSessionState reads the bytes as latin1 for a word check before the full reading; this
    // compares it with the full reading alone (sqlHasSessionState) on texts built to sit near its edges.
    const tokens = [
      'SET', 'set', 'SeT', 'RESET', 'set_config(', '"set_config"(', 'LISTEN', 'PREPARE', 'LOAD', 'DISCARD', 'DEALLOCATE',
      'DECLARE c CURSOR WITH HOLD FOR', 'CREATE TEMP TABLE t', 'CREATE TABLE t ON COMMIT', 'INTO TEMP', 'pg_advisory_lock(',
      'pg_try_advisory_lock_shared(', 'DO $$ BEGIN', 'EXECUTE', 'END $$', 'SELECT', 'LOCAL', 'TRANSACTION', 'search_path',
      ';', ' ', '\n', '--', '/*', '*/', "'", '"', '$$', 'É', 'ſet', 'ßet', '€', '日本', '\u0130', 'S\u0307ET', 'se', 't', '1',
    ];
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let pinned = 0;
    for (let i = 0; i < 20_000; i++) {
      const parts: string[] = [];
      for (let j = 1 + rand(8); j > 0; j--) parts.push(tokens[rand(tokens.length)]!);
      const sql = parts.join(rand(2) === 0 ? ' ' : '');
      const full = sqlHasSessionState(sql);
      if (full) pinned++;
      assert.equal(hasSessionState(queryBody(sql), false), full, `Query: ${JSON.stringify(sql)}`);
      assert.equal(hasSessionState(parseBody('s', sql), true), full, `Parse: ${JSON.stringify(sql)}`);
    }
    assert.ok(pinned > 2000 && pinned < 18_000, `both answers are exercised (${pinned} of 20,000 pin)`);
  });
});
