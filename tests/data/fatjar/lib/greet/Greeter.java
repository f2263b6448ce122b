package greet;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/** A library with JNI code (native/libgreet.so, linking zlib) inside its own jar. */
public final class Greeter {
    static {
        try (InputStream in = Greeter.class.getResourceAsStream("/native/libgreet.so")) {
            Path so = Files.createTempFile("libgreet", ".so");
            Files.copy(in, so, StandardCopyOption.REPLACE_EXISTING);
            System.load(so.toString());
        } catch (Exception e) {
            throw new RuntimeException("cannot load libgreet.so", e);
        }
    }

    public static native String zlibVersion();

    public static String greet(String who) {
        return "hello " + who + " from a nested jar (zlib " + zlibVersion() + ")";
    }
}
