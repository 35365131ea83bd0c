# Foreign keys lose their single-column indexes where a composite index or
# unique constraint leads with the same column (a send wrote 6 indexes on
# dm_deliveries, and a purge deleted from them). The indexes are dropped by
# name rather than by AlterField: on SQLite that would rebuild dm_deliveries
# (slow on a big mailbox) and drop migration 0007's triggers with it.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# index (as Django named it), table, column
COVERED = [
    ("dm_conversation_members_conversation_id_17e9e1c9", "dm_conversation_members", "conversation_id"),  # dm_member_unique
    ("dm_conversation_members_user_id_1309dd3d", "dm_conversation_members", "user_id"),  # dm_member_user
    ("dm_deliveries_message_id_1dd9e263", "dm_deliveries", "message_id"),  # dm_delivery_unique
    ("pending_dms_conversation_id_271161a1", "pending_dms", "conversation_id"),  # pending_dms_conv_time
]


def _fk(to, related_name):
    return models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name=related_name,
                             to=to)


class Migration(migrations.Migration):

    dependencies = [
        ('dms', '0007_mailboxes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name='conversationmember', name='conversation',
                                      field=_fk('dms.conversation', 'members')),
                migrations.AlterField(model_name='conversationmember', name='user',
                                      field=_fk(settings.AUTH_USER_MODEL, 'dm_memberships')),
                migrations.AlterField(model_name='delivery', name='message', field=_fk('dms.pendingdm', 'deliveries')),
                migrations.AlterField(model_name='pendingdm', name='conversation',
                                      field=_fk('dms.conversation', 'messages')),
            ],
            database_operations=[
                migrations.RunSQL(f"DROP INDEX {index}", f"CREATE INDEX {index} ON {table} ({column})")
                for index, table, column in COVERED
            ],
        ),
    ]
