# Declarations of classify_c's C entry points, so that pgframe_c and myframe_c classify SQL inside a message
# without a copy.

cdef int classify_pg_span(const unsigned char* s, Py_ssize_t n) noexcept
cdef bint mysql_plain_query(const unsigned char* s, Py_ssize_t n) noexcept
