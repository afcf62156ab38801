// pgjdbc through pgwarden, run as a single-file source program:
//   java -cp /usr/share/java/postgresql.jar PgjdbcCheck.java <port> <ca.pem> <user> <tenant>
// with the password in PGWARDEN_TEST_PASSWORD. Connects to 127.0.0.1 (no SNI: JSSE sends none
// for an IP address), names the tenant with options=-c pgwarden.tenant=<tenant>, and verifies the
// server certificate (verify-full) against its IP SAN. Prints one JSON line.
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Map;

public class PgjdbcCheck {
  static final String UNICODE = "emoji \uD83D\uDC18\uD83D\uDE80 CJK 中文 日本語 한국어 combining e\u0301 a\u0308 RTL שלום";

  static String enc(String s) {
    return URLEncoder.encode(s, StandardCharsets.UTF_8).replace("+", "%20");
  }

  static String json(Object v) {
    if (v == null) return "null";
    if (v instanceof Boolean || v instanceof Number) return v.toString();
    if (v instanceof Map<?, ?> m) {
      StringBuilder sb = new StringBuilder("{");
      for (Map.Entry<?, ?> e : m.entrySet()) {
        if (sb.length() > 1) sb.append(',');
        sb.append(json(e.getKey().toString())).append(':').append(json(e.getValue()));
      }
      return sb.append('}').toString();
    }
    StringBuilder sb = new StringBuilder("\"");
    for (char c : v.toString().toCharArray()) {
      if (c == '"' || c == '\\') sb.append('\\').append(c);
      else if (c < 0x20 || c > 0x7e) sb.append(String.format("\\u%04x", (int) c));
      else sb.append(c);
    }
    return sb.append('"').toString();
  }

  static long scalar(Connection c, String sql) throws SQLException {
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      rs.next();
      return rs.getLong(1);
    }
  }

  public static void main(String[] args) throws Exception {
    String port = args[0], ca = args[1], user = args[2], tenant = args[3];
    String url = "jdbc:postgresql://127.0.0.1:" + port + "/postgres"
        + "?sslmode=verify-full&sslrootcert=" + enc(ca)
        + "&options=" + enc("-c pgwarden.tenant=" + tenant)
        + "&ApplicationName=pgjdbc-check&prepareThreshold=1&connectTimeout=10";
    Map<String, Object> res = new LinkedHashMap<>();
    res.put("driver", "pgjdbc");
    try (Connection c = DriverManager.getConnection(url, user, System.getenv("PGWARDEN_TEST_PASSWORD"))) {
      res.put("version", c.getMetaData().getDriverVersion());
      try (Statement st = c.createStatement();
           ResultSet rs = st.executeQuery("SELECT current_user, current_setting('application_name')")) {
        rs.next();
        res.put("user", rs.getString(1));
        res.put("application_name", rs.getString(2));
      }

      try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + ?::int, ?::text")) {
        ps.setInt(1, 40);
        ps.setInt(2, 2);
        ps.setString(3, UNICODE);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          res.put("sum", rs.getInt(1));
          res.put("unicode_ok", UNICODE.equals(rs.getString(2)));
        }
      }

      // prepareThreshold=1: from the first execution on, a named server-side statement.
      boolean ok = true;
      try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2")) {
        for (int i = 0; i < 50; i++) {
          ps.setInt(1, i);
          try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            ok &= rs.getInt(1) == i * 2;
          }
        }
        Map<String, Object> prepared = new LinkedHashMap<>();
        prepared.put("reuses", 50);
        prepared.put("results_ok", ok);
        prepared.put("server_statements", scalar(c, "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql"));
        res.put("prepared", prepared);
      }

      try (Statement st = c.createStatement()) {
        st.execute("CREATE TEMP TABLE t (v int)");
      }
      // A batch: many Bind/Execute pipelined before one Sync.
      try (PreparedStatement ps = c.prepareStatement("INSERT INTO t VALUES (?)")) {
        for (int i = 1; i <= 100; i++) {
          ps.setInt(1, i);
          ps.addBatch();
        }
        int[] counts = ps.executeBatch();
        res.put("batch_ok", counts.length == 100 && scalar(c, "SELECT sum(v) FROM t") == 5050);
      }

      c.setAutoCommit(false);
      try (Statement st = c.createStatement()) {
        st.execute("INSERT INTO t VALUES (1000), (2000)");
      }
      c.rollback();
      long rowsAfterRollback = scalar(c, "SELECT count(*) FROM t") - 100;
      String errCode = null;
      try (Statement st = c.createStatement()) {
        st.execute("SELECT 1 / 0");
      } catch (SQLException e) {
        errCode = e.getSQLState();
      }
      c.rollback();
      Map<String, Object> rollback = new LinkedHashMap<>();
      rollback.put("rows_after_rollback", rowsAfterRollback);
      rollback.put("error_code", errCode);
      rollback.put("after_ok", scalar(c, "SELECT 7") == 7);
      res.put("rollback", rollback);
      c.setAutoCommit(true);

      byte[] data = new byte[64 * 1024];
      new SecureRandom().nextBytes(data);
      String md5 = HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(data));
      try (PreparedStatement ps = c.prepareStatement("SELECT ?::bytea, md5(?::bytea)")) {
        ps.setBytes(1, data);
        ps.setBytes(2, data);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          byte[] back = rs.getBytes(1);
          Map<String, Object> bytea = new LinkedHashMap<>();
          bytea.put("length", back.length);
          bytea.put("equal", Arrays.equals(back, data));
          bytea.put("md5_match", md5.equals(rs.getString(2)));
          res.put("bytea", bytea);
        }
      }
    }
    System.out.println(json(res));
  }
}
