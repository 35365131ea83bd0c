# devices.user loses its single-column index: devices_user_revoked (user, revoked_at) leads with it.
# The index is dropped by name, not by AlterField: on SQLite that would rebuild the table.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0002_user_suspension_and_challenge_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='device',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name='devices', to=settings.AUTH_USER_MODEL),
                ),
            ],
            database_operations=[
                migrations.RunSQL("DROP INDEX devices_user_id_9a5cca49",
                                  "CREATE INDEX devices_user_id_9a5cca49 ON devices (user_id)"),
            ],
        ),
    ]
