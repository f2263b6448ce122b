package org.fusetest.loader;

import java.io.InputStream;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Enumeration;
import java.util.List;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;

/** A minimal launcher in the style of Spring Boot's: the app's classes are in
 *  BOOT-INF/classes, its libraries are jars nested in BOOT-INF/lib (extracted to a temp
 *  directory here), and the manifest's Start-Class is the app's main class. */
public final class JarLauncher {
    public static void main(String[] args) throws Exception {
        Path self = Path.of(JarLauncher.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        Path tmp = Files.createTempDirectory("fatjar-lib");
        List<URL> urls = new ArrayList<>();
        urls.add(new URL("jar:" + self.toUri() + "!/BOOT-INF/classes/"));
        String start;
        try (JarFile jar = new JarFile(self.toFile())) {
            start = jar.getManifest().getMainAttributes().getValue("Start-Class");
            Enumeration<JarEntry> entries = jar.entries();
            while (entries.hasMoreElements()) {
                JarEntry e = entries.nextElement();
                if (e.getName().startsWith("BOOT-INF/lib/") && e.getName().endsWith(".jar")) {
                    Path out = tmp.resolve(e.getName().substring("BOOT-INF/lib/".length()));
                    try (InputStream in = jar.getInputStream(e)) {
                        Files.copy(in, out, StandardCopyOption.REPLACE_EXISTING);
                    }
                    urls.add(out.toUri().toURL());
                }
            }
        }
        URLClassLoader loader = new URLClassLoader(urls.toArray(new URL[0]), JarLauncher.class.getClassLoader());
        Thread.currentThread().setContextClassLoader(loader);
        Method main = loader.loadClass(start).getMethod("main", String[].class);
        main.invoke(null, (Object) args);
    }
}
