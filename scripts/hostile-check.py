#!/usr/bin/env python3
"""Two attacks of a hostile client against a `virtualfit` binary on 127.0.0.1, for before/after
figures (the tests in tests/server/hostile.rs assert the same behaviour; this prints the numbers):

1. 16 concurrent requests whose person image is a 5900×5900 16-bit RGBA PNG (0.4 MB, 278 MB
   decoded): the statuses and the server's peak RSS (VmHWM);
2. 200 uploads that send their headers and a few body bytes and stall, then 12 real /tryon
   requests: how many are served.

    python3 scripts/hostile-check.py target/release/virtualfit 8130

Standard library and curl only; the server runs with its defaults (`--device cpu`).
"""
import struct
import zlib
import socket, subprocess, sys, time, threading, urllib.request, os
BIN=sys.argv[1]; PORT=int(sys.argv[2]); ROOT=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'assets', 'samples')
def start(extra):
    p=subprocess.Popen([BIN,'serve','--bind',f'127.0.0.1:{PORT}','--device','cpu']+extra,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if urllib.request.urlopen(f'http://127.0.0.1:{PORT}/readyz',timeout=1).status==200: return p
        except Exception: time.sleep(0.1)
    raise SystemExit('not ready')
def hwm(p):
    for l in open(f'/proc/{p.pid}/status'):
        if l.startswith('VmHWM'): return int(l.split()[1])//1024
def curl(person, cloth, out):
    r=subprocess.run(['curl','-s','-o','/dev/null','-w','%{http_code}','-F',f'person_image=@{person}','-F',f'cloth_image=@{cloth}',f'http://127.0.0.1:{PORT}/tryon'],capture_output=True,text=True,timeout=120)
    out.append(r.stdout)
BOMB = '/tmp/virtualfit-bomb.png'
if not os.path.exists(BOMB):
    w = h = 5900
    row = b'\x00' + bytes([0x80, 0, 0x40, 0, 0x20, 0, 0xff, 0xff]) * w
    z = zlib.compressobj(6)
    data = b''.join(z.compress(row) for _ in range(h)) + z.flush()
    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    with open(BOMB, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 6, 0, 0, 0))
                + chunk(b'IDAT', data) + chunk(b'IEND', b''))
# 1. 16 bombs
p=start([]); base=hwm(p); out=[]
ts=[threading.Thread(target=curl,args=(BOMB,f'{ROOT}/cloth/017575_1.jpg',out)) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
alive = p.poll() is None
print(f'16 bombs: statuses {sorted(out)}; peak RSS {hwm(p) if alive else "n/a"} MiB (before {base}); alive={alive}')
p.kill(); p.wait()
# 2. 200 stalled uploads
p=start([]); socks=[]
for i in range(200):
    s=socket.create_connection(('127.0.0.1',PORT))
    s.sendall(f'POST /tryon HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 100000\r\n\r\n--XYZ\r\n'.encode())
    socks.append(s)
time.sleep(0.5); out=[]
for i in range(12): curl(f'{ROOT}/person/000066_0.jpg', f'{ROOT}/cloth/017575_1.jpg', out)
print(f'/tryon during 200 stalled uploads: {out.count("200")}/12 served; statuses {sorted(set(out))}')
for s in socks: s.close()
p.kill(); p.wait()
