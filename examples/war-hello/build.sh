#!/bin/sh
# Build hello.war: the servlet compiled against Tomcat 10's servlet API (Debian package
# libtomcat10-java on the host), packaged with jar.
set -eu
cd "$(dirname "$0")"
api=/usr/share/java/tomcat10-servlet-api.jar
[ -f "$api" ] || { echo "$api is missing: apt-get install libtomcat10-java" >&2; exit 1; }
rm -rf stage && mkdir -p stage/WEB-INF/classes
javac --release 17 -cp "$api" -d stage/WEB-INF/classes src/hello/HelloServlet.java
cp WEB-INF/web.xml stage/WEB-INF/web.xml
jar --create --file hello.war -C stage .
rm -rf stage
echo "examples/war-hello/hello.war"
