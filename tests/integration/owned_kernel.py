"""Model code that owns the kernel, for the hostile tests: the kernel's own pipe link (found through sub_call's
closures) and a raw frame writer. One copy, so a change to how the kernel binds its API is mended once."""
import textwrap

OWN_LINK = textwrap.dedent(r'''
    import json as _j, os as _o, struct as _s, threading as _t, time as _tm
    _fns = [sub_call] + [c.cell_contents for c in sub_call.__closure__ if callable(c.cell_contents)]
    _link = [c.cell_contents for f in _fns for c in (getattr(f, '__closure__', None) or ()) if hasattr(c.cell_contents, 'fd_out')][0]
    def _frame(obj, kind=b'J'):
        p = obj if isinstance(obj, bytes) else _j.dumps(obj).encode()
        return _s.pack('>cI', kind, len(p)) + p
    ''')
