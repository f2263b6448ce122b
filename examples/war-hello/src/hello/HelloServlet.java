package hello;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * Answers GET / with the uid, the server and a greeting; GET /mbeans with the number of
 * Tomcat's MBeans on the platform MBean server (0 when its registry is off).
 */
public class HelloServlet extends HttpServlet {
    static String uid() {
        try {
            for (String l : Files.readAllLines(Paths.get("/proc/self/status"))) {
                if (l.startsWith("Uid:")) {
                    return l.split("\\s+")[1];
                }
            }
        } catch (IOException e) {
            return "?";
        }
        return "?";
    }

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        resp.setContentType("text/plain");
        if ("/mbeans".equals(req.getServletPath())) {
            int n;
            try {
                n = ManagementFactory.getPlatformMBeanServer()
                        .queryNames(new javax.management.ObjectName("Catalina:*"), null).size();
            } catch (javax.management.MalformedObjectNameException e) {
                n = -1;
            }
            resp.getWriter().print("mbeans=" + n + "\n");
            return;
        }
        resp.getWriter().print("uid=" + uid() + " server=" + getServletContext().getServerInfo()
                + " context=" + req.getContextPath() + "/ hello from a war\n");
    }
}
