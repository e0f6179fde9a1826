#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/fuzz_http_multipart.c and fuzz/fuzz_http_json.c (fuzz/corpus/http_*):
valid requests of every shape the server takes, and the malformed ones its tests send."""
import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
R = os.path.join(HERE, "corpus")
PNG = open(os.path.join(HERE, "..", "tests", "images", "small.png"), "rb").read()[:300]


def mp(fields, files, b="XyZ"):
    out = b""
    for k, v in fields.items():
        out += b"--" + b.encode() + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n' + v.encode() + b"\r\n"
    for k, (fn, d) in files.items():
        out += (b"--" + b.encode() + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"; filename="'
                + fn.encode() + b'"\r\nContent-Type: image/png\r\n\r\n' + d + b"\r\n")
    return out + b"--" + b.encode() + b"--\r\n"


def main():
    ct = b"multipart/form-data; boundary=XyZ\n"
    img = {"image": ("a.png", PNG)}
    m = {
        "good": ct + mp({"prompt": "<image>\nFree OCR.", "mode": "tiny", "save_to_file": "false"}, img),
        "sizes": ct + mp({"base_size": "640", "image_size": "640", "crop_mode": "0", "max_tokens": "5"}, img),
        "quoted": b'multipart/form-data; boundary="a b;c"\n' + mp({}, {"image": ('x \\" y.png', PNG)}, b="a b;c"),
        "preamble": ct + b"junk before\r\n" + mp({"prompt": "hi"}, img) + b"epilogue",
        "empty_image": ct + mp({}, {"image": ("a.png", b"")}),
        "no_image": ct + mp({"file": "x"}, {}),
        "unclosed": ct + mp({}, img)[:-12],
        "no_boundary": b"multipart/form-data\n" + mp({}, {}),
        "wrong_type": b"application/json\n{}",
        "two_images": ct + mp({}, img)[:-9] + mp({}, {"image": ("b.png", PNG)}),
        "no_disposition": ct + b"--XyZ\r\nContent-Type: text/plain\r\n\r\nabc\r\n--XyZ--\r\n",
        "bad_header": ct + b"--XyZ\r\nno colon here\r\n\r\nabc\r\n--XyZ--\r\n",
        "transfer_enc": ct + b'--XyZ\r\nContent-Disposition: form-data; name="image"\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--XyZ--\r\n',
        "bad_bool": ct + mp({"crop_mode": "maybe"}, img),
        "nul_field": ct + mp({"mode": "ti\0ny"}, img),
        "long_prompt": ct + mp({"prompt": "x" * 4100}, img),
        "bad_utf8": ct + b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xc3\x28\xff\r\n' + mp({}, img),
        "lf_only": ct + mp({}, img).replace(b"\r\n", b"\n"),
    }
    b64 = base64.b64encode(PNG).decode()
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}}
    d = lambda o: json.dumps(o).encode()  # noqa: E731
    j = {
        "b64_good": b"\0" + d({"image_base64": b64, "prompt": "<image>\nFree OCR.", "mode": "tiny", "save_to_file": False}),
        "b64_dataurl": b"\0" + d({"image_base64": "data:image/png;base64," + b64, "base_size": "1024", "image_size": 640,
                                  "crop_mode": "true", "max_tokens": 3}),
        "b64_bad": b"\0" + d({"image_base64": "@@@"}),
        "b64_types": b"\0" + d({"image_base64": 5, "prompt": [1], "base_size": 1.5}),
        "b64_trunc": b'\0{"image_base64": "QUJD',
        "b64_trailing": b'\0{"image_base64": "QUJD"} x',
        "chat_good": b"\1" + d({"model": "m", "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True},
                                "temperature": 0.5, "messages": [{"role": "system", "content": "s"},
                                                                 {"role": "user", "content": [part, {"type": "text", "text": "Free OCR."}]}]}),
        "chat_string_url": b"\1" + d({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": b64}]}]}),
        "chat_two_images": b"\1" + d({"messages": [{"role": "user", "content": [part, part]}]}),
        "chat_no_image": b"\1" + d({"messages": [{"role": "user", "content": "hello"}]}),
        "chat_http": b"\1" + d({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://a/b.png"}}]}]}),
        "chat_image_tag": b"\1" + d({"mode": "tiny", "compat": "hf", "n": 1, "messages": [{"role": "user", "content": [
            part, {"type": "text", "text": "<image>\nLocate <|ref|>x<|/ref|>"}]}]}),
        "chat_deep": b'\1{"messages":' + b"[" * 3000 + b"]" * 3000 + b"}",
        "chat_bad_types": b"\1" + d({"messages": [{"role": 5}, {"content": {}}], "max_tokens": "x", "stream": "yes"}),
        "chat_unicode": b"\1" + d({"messages": [{"role": "user", "content": [part, {"type": "text", "text": "\u00e9\u4e2d\U0001F600 \u0000"}]}]}),
        "raw_b64": b"\2" + b64.encode(),
        "raw_urlsafe": b"\2" + base64.urlsafe_b64encode(PNG).rstrip(b"="),
        "raw_dataurl_nob64": b"\2data:image/png,abc",
        "raw_pad": b"\2QQ==QQ",
    }
    for sub, files in (("http_multipart", m), ("http_json", j)):
        os.makedirs(os.path.join(R, sub), exist_ok=True)
        for k, v in files.items():
            with open(os.path.join(R, sub, k), "wb") as f:
                f.write(v)


if __name__ == "__main__":
    main()
