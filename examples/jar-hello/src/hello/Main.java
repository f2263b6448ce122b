package hello;

import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.KeyStore;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

/** Answers GET / with the uid, the Java version, the trusted CA count and a greeting. */
public class Main {
    static String uid() {
        try {
            for (String l : Files.readAllLines(Paths.get("/proc/self/status"))) {
                if (l.startsWith("Uid:")) {
                    return l.split("\\s+")[1];
                }
            }
        } catch (Exception e) {
            return "?";
        }
        return "?";
    }

    /** How many CAs the default TLS trust manager has (0 when Java's keystore is missing). */
    static int trustedCas() {
        try {
            TrustManagerFactory f = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            f.init((KeyStore) null);
            return ((X509TrustManager) f.getTrustManagers()[0]).getAcceptedIssuers().length;
        } catch (Exception e) {
            return -1;
        }
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        String greeting = System.getProperty("greeting", "hello");
        int cas = trustedCas();
        HttpServer s = HttpServer.create(new InetSocketAddress(port), 16);
        s.createContext("/", ex -> {
            byte[] body = ("uid=" + uid() + " java=" + System.getProperty("java.version")
                    + " cas=" + cas + " maxheap=" + (Runtime.getRuntime().maxMemory() >> 20) + "M "
                    + greeting + " from java\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream o = ex.getResponseBody()) {
                o.write(body);
            }
        });
        s.start();
        System.out.println("listening on " + port + " with " + cas + " trusted CAs");
    }
}
