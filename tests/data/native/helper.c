/* libfmhelper: the library a wheel bundles beside its extension (fastmath.libs/). */
const char *fm_helper_name(void) { return "bundled-fmhelper"; }
