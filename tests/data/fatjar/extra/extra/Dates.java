package extra;

/** A library beside the fat jar, reached through its manifest's Class-Path (lib/extra.jar);
 *  it uses java.sql, a JDK module nothing else in the app needs. */
public final class Dates {
    public static String release() {
        return "release=" + java.sql.Date.valueOf("2026-11-29");
    }
}
