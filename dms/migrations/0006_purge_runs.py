# PurgeRun (the purge history), and max_request_bytes says the environment caps it.

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dms', '0005_drop_challenge_rate_per_key'),
    ]

    operations = [
        migrations.CreateModel(
            name='PurgeRun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('started_at', models.DateTimeField(db_index=True)),
                ('as_of', models.DateTimeField()),
                ('dry_run', models.BooleanField(default=False)),
                ('duration_ms', models.PositiveIntegerField()),
                ('counts', models.JSONField(default=dict)),
            ],
            options={
                'db_table': 'dm_purge_runs',
                'ordering': ['-started_at'],
            },
        ),
        migrations.AlterField(
            model_name='serversettings',
            name='max_request_bytes',
            field=models.PositiveIntegerField(default=262144, help_text="request bodies over this are refused with 413; the smaller of this and the environment's MAX_REQUEST_BYTES wins (the environment caps it)", validators=[django.core.validators.MinValueValidator(1024)]),
        ),
    ]
