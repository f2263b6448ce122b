package hello;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;

/** Answers GET / with the uid, the server and a greeting. */
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
        resp.getWriter().print("uid=" + uid() + " server=" + getServletContext().getServerInfo()
                + " context=" + req.getContextPath() + "/ hello from a war\n");
    }
}
