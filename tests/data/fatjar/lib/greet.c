/* libgreet: JNI code of the nested jar's greet.Greeter, linking zlib. */
#include <jni.h>
#include <zlib.h>

JNIEXPORT jstring JNICALL Java_greet_Greeter_zlibVersion(JNIEnv *env, jclass cls) {
    (void)cls;
    return (*env)->NewStringUTF(env, zlibVersion());
}
