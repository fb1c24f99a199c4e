"""A real SMTP server for the dispatcher's tests (aiosmtpd), with scripted answers.

    python3 smtp_server.py <port> <folder>

Every email it accepts is written to <folder> as <n>.eml. Recipients choose answers:
defer-...@ gets 451 on the first attempt at each Message-ID and is accepted after;
busy-...@ always gets 451; reject-...@ always gets 550. It runs until killed.
"""

import os
import sys
import threading

from aiosmtpd.controller import Controller


class Scripted:
    def __init__(self, folder):
        self.folder = folder
        self.deferred = set()
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        content = envelope.content or b""
        message_id = ""
        for line in content.decode("utf-8", "replace").splitlines():
            if line.lower().startswith("message-id:"):
                message_id = line.split(":", 1)[1].strip()
                break
        if recipient.startswith("reject-"):
            return "550 5.1.1 mailbox unavailable"
        if recipient.startswith("busy-"):
            return "451 4.3.2 system busy"
        if recipient.startswith("defer-") and message_id not in self.deferred:
            self.deferred.add(message_id)
            return "451 4.3.0 try again later"
        self.count += 1
        path = os.path.join(self.folder, "%06d.eml" % self.count)
        with open(path + ".part", "wb") as out:
            out.write(content)
        os.rename(path + ".part", path)
        return "250 OK"


def main():
    port, folder = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Scripted(folder), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
