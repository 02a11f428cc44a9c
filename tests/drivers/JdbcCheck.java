// pgjdbc through Sluice: server-side prepared statements (after prepareThreshold uses),
// a pipelined batch in a transaction. Prints one line that the Rust test compares.
// Usage: java -cp postgresql.jar:. JdbcCheck jdbc:postgresql://127.0.0.1:PORT/appdb TOKEN
import java.sql.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        StringBuilder out = new StringBuilder();
        try (Connection c = DriverManager.getConnection(args[0] + "?sslmode=disable&prepareThreshold=2", "agent", args[1])) {
            long sum = 0;
            try (PreparedStatement ps = c.prepareStatement("select ?::int * 3")) {
                for (int i = 1; i <= 10; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) { rs.next(); sum += rs.getLong(1); }
                }
            }
            out.append(sum);
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("create temp table jdbc_batch(x int) on commit drop");
                try (PreparedStatement ins = c.prepareStatement("insert into jdbc_batch values (?)")) {
                    for (int i = 0; i < 100; i++) { ins.setInt(1, i); ins.addBatch(); }
                    ins.executeBatch();
                }
                try (ResultSet rs = s.executeQuery("select count(*), sum(x) from jdbc_batch")) {
                    rs.next();
                    out.append(" ").append(rs.getLong(1)).append(" ").append(rs.getLong(2));
                }
            }
            c.commit();
        }
        System.out.println(out);
    }
}
