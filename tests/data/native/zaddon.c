/* zaddon: a Node.js native addon (N-API) linking zlib, for fuse's native-code tests. */
#include <node_api.h>
#include <zlib.h>

static napi_value crc(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    char buf[256];
    size_t len = 0;
    napi_value out;
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    napi_get_value_string_utf8(env, argv[0], buf, sizeof buf, &len);
    napi_create_uint32(env, (uint32_t)crc32(0L, (const Bytef *)buf, (uInt)len), &out);
    return out;
}

static napi_value version(napi_env env, napi_callback_info info) {
    napi_value out;
    (void)info;
    napi_create_string_utf8(env, zlibVersion(), NAPI_AUTO_LENGTH, &out);
    return out;
}

NAPI_MODULE_INIT() {
    napi_value f;
    napi_create_function(env, "crc32", NAPI_AUTO_LENGTH, crc, NULL, &f);
    napi_set_named_property(env, exports, "crc32", f);
    napi_create_function(env, "zlibVersion", NAPI_AUTO_LENGTH, version, NULL, &f);
    napi_set_named_property(env, exports, "zlibVersion", f);
    return exports;
}
