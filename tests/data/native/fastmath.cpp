// fastmath: a CPython extension module for fuse's native-code tests. C++ (libstdc++) and
// OpenMP (libgomp), plus a library the "wheel" bundles itself (libfmhelper.so, found
// through RUNPATH $ORIGIN/../fastmath.libs), as auditwheel lays out manylinux wheels.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <omp.h>
#include <string>
#include <vector>

extern "C" const char *fm_helper_name(void);

static PyObject *parallel_sum(PyObject *, PyObject *args) {
    long n;
    if (!PyArg_ParseTuple(args, "l", &n)) return NULL;
    std::vector<long> v(n);
    for (long i = 0; i < n; i++) v[i] = i + 1;
    long total = 0;
#pragma omp parallel for reduction(+ : total)
    for (long i = 0; i < n; i++) total += v[i];
    return PyLong_FromLong(total);
}

static PyObject *describe(PyObject *, PyObject *) {
    std::string s = "omp_threads=" + std::to_string(omp_get_max_threads()) +
                    " helper=" + fm_helper_name();
    return PyUnicode_FromString(s.c_str());
}

static PyMethodDef methods[] = {
    {"parallel_sum", parallel_sum, METH_VARARGS, "sum of 1..n, in parallel"},
    {"describe", describe, METH_NOARGS, "OpenMP threads and the bundled helper"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", NULL, -1, methods};

PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&module); }
