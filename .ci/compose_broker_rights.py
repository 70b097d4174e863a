"""A service's broker user in compose's real RabbitMQ: it logs in, and the broker refuses its
publish under another service's routing key (topic permissions), closing the channel with
ACCESS_REFUSED. Usage: compose_broker_rights.py HOST USER PASSWORD NAMESPACE
"""
import sys

import pika
from pika.exceptions import ChannelClosedByBroker

OTHERS_KEY = "payment.payment_completed"


def main() -> int:
    host, user, password, namespace = sys.argv[1:5]
    params = pika.ConnectionParameters(host, 5672, "/", pika.PlainCredentials(user, password))
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        channel.basic_publish(f"{namespace}.events", OTHERS_KEY, b"{}", mandatory=True)
    except ChannelClosedByBroker as refused:
        if refused.reply_code == 403:
            print(f"{user} may not publish {OTHERS_KEY}: {refused.reply_text}")
            connection.close()
            return 0
        print(f"{user}'s publish failed, but not as refused: {refused}")
        return 1
    print(f"{user} published {OTHERS_KEY}: the broker let a service announce another's event")
    return 1


if __name__ == "__main__":
    sys.exit(main())
